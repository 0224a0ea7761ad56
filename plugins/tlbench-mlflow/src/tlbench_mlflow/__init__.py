"""tlbench-mlflow: tlbench runs in MLflow, through tlbench's lifecycle hooks."""

__version__ = "0.1.0"
