"""Running a sweep: groups of cases into rows, sittings in fresh processes, Ray, and re-measuring."""
