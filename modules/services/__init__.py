"""Services: the one generation path, the job queue, models and images. Faces call these."""
