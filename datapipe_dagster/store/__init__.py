"""Where rows live: the TableStore interface, its stores (SQL, file folders, file tables) and SQL helpers."""
