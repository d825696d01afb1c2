"""What inspection leaves behind: the results database, overlay images, HTML and CSV reports."""
