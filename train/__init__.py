"""Fine-tuning on the evolved data: pure formatting/masking/packing/metrics + Ray Train glue."""
