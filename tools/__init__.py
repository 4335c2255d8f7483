"""Tools run from the repository: the single-file build, the mutation tester, and the launchers of real
servers (redis-server, a cluster of recsvc nodes behind nginx) shared by the tests and the benchmark."""
