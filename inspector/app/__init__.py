"""What the command line and the window both run: inspection runs, training and benchmark jobs, the
demo line."""
