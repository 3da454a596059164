"""Driving a run: its context, the scheduler, step drivers, tmux jobs, the monitor, log watching and remedies."""
