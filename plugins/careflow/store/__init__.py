"""careflow's persistent state: tables, migrations and the queries the engine runs."""
