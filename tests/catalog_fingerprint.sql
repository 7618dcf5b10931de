-- Everything pg_dialpad puts in a database's catalogs, one row per fact, for comparing an
-- upgraded database with a fresh install (tests/upgrade.rs). Data is not compared here.
WITH ext AS (SELECT oid, extversion, extconfig, extcondition FROM pg_extension WHERE extname = 'pg_dialpad'),
rels AS (SELECT c.oid, c.relname, c.relkind
           FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid
           JOIN pg_class t ON t.oid = coalesce(i.indrelid, c.oid), ext
          WHERE c.relnamespace = 'dialpad'::regnamespace
            -- the time partitions dialpad.run_maintenance() makes, and their indexes, are data
            AND (NOT t.relispartition OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                   AND d.objid = t.oid AND d.refobjid = ext.oid AND d.deptype = 'e')))
SELECT 'extension ' || extversion || ' config ' || coalesce((SELECT string_agg(x::regclass::text, ',' ORDER BY x::regclass::text) FROM unnest(extconfig) x), '')
       || ' conditions ' || coalesce(array_to_string(extcondition, ','), '') FROM ext
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
   -- `cargo pgrx test` builds add their test functions in schema tests; no release has them
   AND pg_describe_object(d.classid, d.objid, d.objsubid) !~ '^(schema tests|function tests\.)'
UNION ALL
SELECT format('relation %s kind=%s persistence=%s options=%s acl=%s comment=%s', r.relname, r.relkind, c.relpersistence,
              c.reloptions, (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) a), obj_description(r.oid, 'pg_class'))
  FROM rels r JOIN pg_class c ON c.oid = r.oid
UNION ALL
SELECT format('column %s.%s #%s %s notnull=%s default=%s compression=%s acl=%s comment=%s', r.relname, a.attname, a.attnum,
              format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attcompression,
              (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x), col_description(r.oid, a.attnum))
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
UNION ALL
-- PostgreSQL 18 keeps NOT NULL constraints in pg_constraint under names it makes up from the
-- table's name at the time: the upgrade's new tables get a digit (the 0.1.0 tables, kept as
-- partitions, hold the plain names). They are compared by column, not by name.
SELECT format('constraint %s %s %s', r.relname, CASE WHEN co.contype = 'n' THEN '(not null)' ELSE co.conname END,
              pg_get_constraintdef(co.oid))
  FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM rels r JOIN pg_index i ON i.indrelid = r.oid
UNION ALL
SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
  FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
UNION ALL
SELECT format('view %s %s', r.relname, pg_get_viewdef(r.oid)) FROM rels r WHERE r.relkind = 'v'
UNION ALL
SELECT format('sequence %s %s %s %s %s %s', r.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax, s.seqcycle)
  FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
UNION ALL
SELECT format('function %s returns %s lang=%s src=%s bin=%s volatile=%s strict=%s parallel=%s secdef=%s config=%s acl=%s comment=%s',
              p.oid::regprocedure, pg_get_function_result(p.oid), l.lanname, p.prosrc, p.probin, p.provolatile, p.proisstrict,
              p.proparallel, p.prosecdef, p.proconfig, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) x),
              obj_description(p.oid, 'pg_proc'))
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = 'dialpad'::regnamespace
UNION ALL
SELECT format('event trigger %s on %s tags=%s function=%s enabled=%s', e.evtname, e.evtevent, e.evttags, e.evtfoid::regprocedure, e.evtenabled)
  FROM pg_event_trigger e WHERE e.evtfoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'dialpad'::regnamespace)
UNION ALL
SELECT format('schema dialpad acl=%s', (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(n.nspacl) x))
  FROM pg_namespace n WHERE n.nspname = 'dialpad'
ORDER BY 1;
