"""The benchmark harness behind `make bench` (`python -m bench`): throughput, latency and baselines."""
