"""The run steps without Flower: settings, group training by FedAvg, distillation, contributions and
pruning. The ServerApp phases, the ``eosfed`` commands and the benchmarks all call these."""
