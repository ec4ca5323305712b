"""What a run tells its user about the rows it wrote: the workflow's own figures."""
