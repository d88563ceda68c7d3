"""Scheduling backends: local Ray Tune, and Ray on SLURM through submitit."""
