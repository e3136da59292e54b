# Only the lab targets live here so far; see lab/README.md.
.PHONY: lab-up lab-down

lab-up:
	lab/lab up

lab-down:
	lab/lab down
