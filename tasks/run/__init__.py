"""A run's records: its folder's lifecycle, and the callbacks that write what a run leaves behind.

    rundir.py              run.json: create, reopen to resume, mark running/finished (`run_lifecycle`)
    outputs.py             config.yaml; callbacks HistoryCsv (history.csv as epochs end) and RunFolder
                           (device.json, metrics.json, history.csv, plots/, report.md, tracking.json)
    plots.py               the PNG plots
    report_md.py           report.md: its markdown, built and written
    tracking.py            the loggers a run's config turns on (`start_tracking`), and tracking.json
    tensorboard_logger.py  callback TensorBoardLogger: one TensorBoard run
    mlflow_logger.py       callback MLflowLogger: one MLflow run
    logged_values.py       the numbers both loggers log
    artifacts.py           the Prefect artifacts a finished run publishes (report, plots, history, links)

Nothing here imports a stage: this layer sits beside the stages, and the
recipe (tasks.recipe) runs both.
"""
