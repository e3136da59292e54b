"""Package data of pgha: templates, SQL, the shipped inventory and the host-side programs."""
