"""Dataset jobs: find the inputs (inputs.py), run them in batches (run.py; Ray: ray_backend.py) and
write the results (results.py), resumably, never over a file that is not zerocap's own."""
