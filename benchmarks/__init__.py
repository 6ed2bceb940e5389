"""The benchmark of issue 5: restore speed and memory against real peers (cp, boto3, rclone,
b3sum), run with ``python -m benchmarks`` (``make bench``) and written to ``BENCHMARKS.md``."""
