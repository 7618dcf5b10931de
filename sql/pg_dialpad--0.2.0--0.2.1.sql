-- pg_dialpad 0.2.0 -> 0.2.1: a security release (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.2.1'" to load this file. \quit
