"""What is simulated: model, topology, workload, parallel layout and the assumptions in force."""
