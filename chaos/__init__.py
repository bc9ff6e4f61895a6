"""hookline's fault-injection run ("chaos"): ``python chaos/run.py --help``."""
