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
SELECT format('relation %s kind=%s persistence=%s options=%s acl=%s owner=%s am=%s rls=%s/%s replident=%s partkey=%s bound=%s comment=%s',
              r.relname, r.relkind, c.relpersistence, c.reloptions, (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) a),
              c.relowner::regrole, (SELECT amname FROM pg_am WHERE oid = c.relam), c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
              CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, pg_get_expr(c.relpartbound, c.oid), obj_description(r.oid, 'pg_class'))
  FROM rels r JOIN pg_class c ON c.oid = r.oid
UNION ALL
SELECT format('column %s.%s #%s %s notnull=%s default=%s generated=%s identity=%s collation=%s storage=%s compression=%s acl=%s comment=%s',
              r.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
              a.attgenerated, a.attidentity, CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation END, a.attstorage, a.attcompression,
              (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x), col_description(r.oid, a.attnum))
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
UNION ALL
-- PostgreSQL 18 keeps NOT NULL constraints in pg_constraint under names it makes up from the
-- table's name at the time: the upgrade's new tables get a digit (the 0.1.0 tables, kept as
-- partitions, hold the plain names). They are compared by column, not by name.
SELECT format('constraint %s %s %s comment=%s', r.relname, CASE WHEN co.contype = 'n' THEN '(not null)' ELSE co.conname END,
              pg_get_constraintdef(co.oid), obj_description(co.oid, 'pg_constraint'))
  FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM rels r JOIN pg_index i ON i.indrelid = r.oid
UNION ALL
SELECT format('trigger %s enabled=%s comment=%s', pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger'))
  FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
UNION ALL
SELECT format('view %s %s', r.relname, pg_get_viewdef(r.oid)) FROM rels r WHERE r.relkind = 'v'
UNION ALL
SELECT format('sequence %s %s %s %s %s %s', r.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax, s.seqcycle)
  FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
UNION ALL
SELECT format('function %s(%s) returns %s kind=%s lang=%s src=%s bin=%s volatile=%s strict=%s parallel=%s secdef=%s leakproof=%s cost=%s rows=%s support=%s config=%s owner=%s acl=%s comment=%s',
              p.oid::regproc, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prokind, l.lanname, p.prosrc, p.probin,
              p.provolatile, p.proisstrict, p.proparallel, p.prosecdef, p.proleakproof, p.procost, p.prorows, p.prosupport, p.proconfig,
              p.proowner::regrole, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) x), obj_description(p.oid, 'pg_proc'))
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = 'dialpad'::regnamespace
UNION ALL
SELECT format('event trigger %s on %s tags=%s function=%s enabled=%s', e.evtname, e.evtevent, e.evttags, e.evtfoid::regprocedure, e.evtenabled)
  FROM pg_event_trigger e WHERE e.evtfoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'dialpad'::regnamespace)
UNION ALL
SELECT format('schema dialpad owner=%s acl=%s comment=%s', n.nspowner::regrole, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(n.nspacl) x),
              obj_description(n.oid, 'pg_namespace'))
  FROM pg_namespace n WHERE n.nspname = 'dialpad'
UNION ALL
-- types of their own (not a table's row type, not an array): enums, domains, composites, ranges
SELECT format('type %s kind=%s labels=%s base=%s notnull=%s default=%s checks=%s comment=%s', t.oid::regtype, t.typtype,
              (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
              CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, t.typnotnull, t.typdefault,
              (SELECT array_agg(pg_get_constraintdef(co.oid) ORDER BY co.conname) FROM pg_constraint co WHERE co.contypid = t.oid),
              obj_description(t.oid, 'pg_type'))
  FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
 WHERE t.typnamespace = 'dialpad'::regnamespace AND t.typelem = 0 AND (t.typrelid = 0 OR c.relkind = 'c')
UNION ALL
SELECT format('policy %s on %s cmd=%s permissive=%s roles=%s using=%s check=%s', p.polname, p.polrelid::regclass, p.polcmd,
              p.polpermissive, p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
  FROM pg_policy p JOIN rels r ON r.oid = p.polrelid
UNION ALL
-- rewrite rules other than a view's own
SELECT format('rule %s on %s %s', w.rulename, r.relname, pg_get_ruledef(w.oid))
  FROM pg_rewrite w JOIN rels r ON r.oid = w.ev_class WHERE w.rulename <> '_RETURN'
UNION ALL
SELECT format('statistics %s', pg_get_statisticsobjdef(s.oid))
  FROM pg_statistic_ext s WHERE s.stxnamespace = 'dialpad'::regnamespace
UNION ALL
SELECT format('aggregate %s transfn=%s finalfn=%s combinefn=%s init=%s', a.aggfnoid::regprocedure, a.aggtransfn, a.aggfinalfn,
              a.aggcombinefn, a.agginitval)
  FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid WHERE p.pronamespace = 'dialpad'::regnamespace
UNION ALL
SELECT format('operator %s returns %s function=%s', o.oid::regoperator, o.oprresult::regtype, o.oprcode)
  FROM pg_operator o WHERE o.oprnamespace = 'dialpad'::regnamespace
UNION ALL
SELECT format('cast %s as %s function=%s context=%s', k.castsource::regtype, k.casttarget::regtype, k.castfunc::regprocedure, k.castcontext)
  FROM pg_cast k JOIN pg_depend d ON d.classid = 'pg_cast'::regclass AND d.objid = k.oid AND d.deptype = 'e', ext WHERE d.refobjid = ext.oid
UNION ALL
-- the privileges pg_dump restores on top of CREATE EXTENSION's (pg_init_privs)
SELECT format('initial privileges %s %s', pg_describe_object(i.classoid, i.objoid, i.objsubid),
              (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(i.initprivs) x))
  FROM pg_init_privs i, ext
 WHERE i.privtype = 'e' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.refobjid = ext.oid AND d.deptype = 'e'
                                     AND d.classid = i.classoid AND d.objid = i.objoid)
   AND pg_describe_object(i.classoid, i.objoid, 0) !~ '^(schema tests|function tests\.)'
ORDER BY 1;
