-- pg_dialpad 0.2.1 -> 0.3.0 (CHANGELOG.md). Only what changed.
\echo Use "ALTER EXTENSION pg_dialpad UPDATE TO '0.3.0'" to load this file. \quit
