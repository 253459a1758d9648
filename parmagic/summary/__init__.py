"""What a run is shown as: its figures (RunReport), the CPU monitor's samples, the summary as
text and HTML, the plot, --compare's table."""
