from ofa2_edge.cli.main import run

run()
