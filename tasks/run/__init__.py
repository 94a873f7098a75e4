"""Run plumbing: a run directory's lifecycle and everything a run leaves behind, one job per module.

    rundir.py     run.json: create, reopen to resume, mark running/finished (`run_lifecycle`)
    outputs.py    config.yaml, device.json, metrics.json, history.csv, plots/ (then report.md, trackers)
    plots.py      the PNG plots
    report_md.py  report.md: its markdown, built and written
    tracking.py   TensorBoard and MLflow; tracking.json
    progress.py   the Prefect progress artifact, updated every epoch
    artifacts.py  the Prefect artifacts published after the run (report, history, links)
"""
