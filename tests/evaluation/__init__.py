"""Tests of d2sfm.evaluation: parity with the original D2-Net code, MMA, and the ETH and HPatches protocols."""
