"""Tests of d2sfm.localization and the Aachen and InLoc protocols."""
