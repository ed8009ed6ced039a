"""Analysis helpers behind tools/analysis/ and kd_det.preflight: training curves,
feature-similarity maps, loss balance, step timing and memory, teacher evaluation."""
