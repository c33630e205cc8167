"""Tests of d2sfm.commands: the command lines' shared behaviour, extract and match."""
