"""One module per step of a restore: plain functions, each with a thin @task wrapper."""
