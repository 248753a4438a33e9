"""The study's metrics: leave-one-out accuracy, category exposure (CHR, nCDCG) and significance."""
