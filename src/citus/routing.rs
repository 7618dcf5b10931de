//! Plain INSERTs into the distributed inbox through the coordinator. Citus routes an INSERT
//! to a shard by its distribution column before any trigger runs, and the inbox's is
//! `call_id`, which the insert trigger fills from the payload: `INSERT INTO
//! dialpad.webhook_events (payload) ...` would fail ("cannot perform an INSERT without a
//! partition column value"). This planner hook, which runs before Citus's (pg_dialpad is
//! preloaded after citus), gives such an INSERT its call id: `dialpad.routing_call_id(payload)`
//! (the payload's call id, 0 when it has none), per row of a multi-row VALUES. Where the
//! inbox is not distributed it changes nothing.

use pgrx::pg_sys;
use pgrx::prelude::*;

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

/// Called once from `_PG_init` (preloaded).
pub(crate) fn install() {
    // SAFETY: hooks are installed once, at library load in the postmaster, before any
    // backend plans; the previous hook is called from ours.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: PostgreSQL passes a valid Query being planned; it may be modified in place
    // before planning, as the rewriter's output is ours for this planning.
    unsafe {
        if (*parse).commandType == pg_sys::CmdType::CMD_INSERT {
            name_the_call_id(parse);
        }
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    }
}

/// The `i`-th pointer of a List.
///
/// # Safety
/// `list` is a valid pointer List with more than `i` elements.
unsafe fn nth<T>(list: *mut pg_sys::List, i: usize) -> *mut T {
    // SAFETY: the caller's contract.
    unsafe { (*(*list).elements.add(i)).ptr_value as *mut T }
}

/// # Safety
/// `list` is NULL or a valid List.
unsafe fn len(list: *mut pg_sys::List) -> usize {
    if list.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract: a valid List.
    unsafe { (*list).length as usize }
}

/// Adds `call_id = dialpad.routing_call_id(payload)` to an INSERT into the distributed inbox
/// that does not name a call id (or names NULL).
///
/// # Safety
/// `parse` is a valid INSERT Query.
unsafe fn name_the_call_id(parse: *mut pg_sys::Query) {
    // SAFETY: the caller's contract (a valid INSERT Query), which each step shares; they
    // rebuild the Query's own lists with PostgreSQL's node constructors, in the planner's
    // memory context.
    unsafe {
        let Some(target) = inbox_insert(parse) else { return };
        let Some(func) = routing_function() else { return };
        let pexpr = (*target.payload).expr;
        let value = match values_rte(parse, pexpr) {
            // A multi-row VALUES: Citus routes each row by its own value, so every row gets
            // a column with its call id.
            Some((rte, varno, payload_col)) => values_column(rte, varno, payload_col, func),
            None => match subquery_rte(parse, pexpr) {
                // INSERT ... SELECT: Citus maps the INSERT's columns to the SELECT's, so the
                // call id becomes a column of the SELECT.
                Some((rte, varno, payload_col)) => select_column(rte, varno, payload_col, func),
                None => routing_call(func, pexpr),
            },
        };
        if target.existing.is_null() {
            add_target(parse, value, target.call_attno);
        } else {
            (*target.existing).expr = value;
        }
    }
}

/// An INSERT into the distributed inbox that needs its call id named: its payload's target
/// entry, its `call_id` entry if it has one (a NULL constant), and `call_id`'s attribute number.
struct InboxInsert {
    call_attno: pg_sys::AttrNumber,
    payload: *mut pg_sys::TargetEntry,
    existing: *mut pg_sys::TargetEntry,
}

/// The INSERT's [`InboxInsert`], or None when it is not one to rewrite: another table, the
/// inbox not distributed, no payload (its NOT NULL constraint will say so), a call id named.
///
/// # Safety
/// `parse` is a valid INSERT Query.
unsafe fn inbox_insert(parse: *mut pg_sys::Query) -> Option<InboxInsert> {
    // SAFETY: reads of the Query's range table and target list (the caller's contract), and
    // syscache lookups of the inbox's attributes by valid C strings.
    unsafe {
        let rti = (*parse).resultRelation;
        if rti <= 0 || (rti as usize) > len((*parse).rtable) {
            return None;
        }
        let target: *mut pg_sys::RangeTblEntry = nth((*parse).rtable, rti as usize - 1);
        let inbox = crate::pg::dialpad_relation(c"webhook_events");
        if inbox == pg_sys::InvalidOid || (*target).relid != inbox || !super::inbox_distributed() {
            return None;
        }
        let call_attno = pg_sys::get_attnum(inbox, c"call_id".as_ptr());
        let payload_attno = pg_sys::get_attnum(inbox, c"payload".as_ptr());
        let tlist = (*parse).targetList;
        let mut found = InboxInsert { call_attno, payload: std::ptr::null_mut(), existing: std::ptr::null_mut() };
        for i in 0..len(tlist) {
            let te: *mut pg_sys::TargetEntry = nth(tlist, i);
            if (*te).resno == payload_attno {
                found.payload = te;
            } else if (*te).resno == call_attno {
                found.existing = te;
            }
        }
        if found.payload.is_null() {
            return None;
        }
        if !found.existing.is_null() {
            let e = (*found.existing).expr as *mut pg_sys::Node;
            let null_const = (*e).type_ == pg_sys::NodeTag::T_Const && (*(e as *mut pg_sys::Const)).constisnull;
            if !null_const {
                return None;
            }
        }
        Some(found)
    }
}

/// `dialpad.routing_call_id(jsonb)`, if it exists (it does from the extension's SQL on).
fn routing_function() -> Option<pg_sys::Oid> {
    let argtypes = [pg_sys::JSONBOID];
    // SAFETY: a function lookup by a qualified name list built of valid C strings, in the
    // current memory context; missing_ok, so InvalidOid rather than an error.
    let func = unsafe {
        let mut name = pgrx::PgList::<std::ffi::c_void>::new();
        name.push(pg_sys::makeString(c"dialpad".as_ptr() as *mut _) as *mut _);
        name.push(pg_sys::makeString(c"routing_call_id".as_ptr() as *mut _) as *mut _);
        pg_sys::LookupFuncName(name.into_pg(), 1, argtypes.as_ptr(), true)
    };
    (func != pg_sys::InvalidOid).then_some(func)
}

/// `func(arg)`: the routing function over a copy of `arg`.
///
/// # Safety
/// `func` is `dialpad.routing_call_id(jsonb)`; `arg` a valid jsonb expression.
unsafe fn routing_call(func: pg_sys::Oid, arg: *mut pg_sys::Expr) -> *mut pg_sys::Expr {
    // SAFETY: node constructors over a copy of a valid expression (the caller's contract).
    unsafe {
        let mut args = pgrx::PgList::<pg_sys::Expr>::new();
        args.push(pg_sys::copyObjectImpl(arg as *const _) as *mut pg_sys::Expr);
        pg_sys::makeFuncExpr(
            func,
            pg_sys::INT8OID,
            args.into_pg(),
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        ) as *mut pg_sys::Expr
    }
}

/// Adds a `call_id` column to a VALUES list (each row's call id from its own payload) and
/// returns the Var that reads it.
///
/// # Safety
/// `rte` is the VALUES entry at `varno` of a valid Query, its payload at column `payload_col`
/// (0-based); `func` as in [`routing_call`].
unsafe fn values_column(
    rte: *mut pg_sys::RangeTblEntry,
    varno: i32,
    payload_col: usize,
    func: pg_sys::Oid,
) -> *mut pg_sys::Expr {
    // SAFETY: the caller's contract; every list is extended with PostgreSQL's own functions.
    unsafe {
        let lists = (*rte).values_lists;
        for i in 0..len(lists) {
            let row: *mut pg_sys::List = nth(lists, i);
            let v = routing_call(func, nth(row, payload_col));
            (*(*lists).elements.add(i)).ptr_value = pg_sys::lappend(row, v as *mut _) as *mut _;
        }
        (*rte).coltypes = pg_sys::lappend_oid((*rte).coltypes, pg_sys::INT8OID);
        (*rte).coltypmods = pg_sys::lappend_int((*rte).coltypmods, -1);
        (*rte).colcollations = pg_sys::lappend_oid((*rte).colcollations, pg_sys::InvalidOid);
        call_id_var(rte, varno, (len((*(*rte).eref).colnames) + 1) as pg_sys::AttrNumber)
    }
}

/// Names the `call_id` column just added to `rte` (its column `attno`, the last) and returns
/// the Var that reads it.
///
/// # Safety
/// `rte` is the range table entry at `varno` of a valid Query.
unsafe fn call_id_var(rte: *mut pg_sys::RangeTblEntry, varno: i32, attno: pg_sys::AttrNumber) -> *mut pg_sys::Expr {
    // SAFETY: the caller's contract; the name list is extended with PostgreSQL's own functions.
    unsafe {
        let eref = (*rte).eref;
        (*eref).colnames =
            pg_sys::lappend((*eref).colnames, pg_sys::makeString(c"call_id".as_ptr() as *mut _) as *mut _);
        pg_sys::makeVar(varno, attno, pg_sys::INT8OID, -1, pg_sys::InvalidOid, 0) as *mut pg_sys::Expr
    }
}

/// Adds a `call_id` column to the SELECT of an INSERT ... SELECT, after the SELECT's own
/// columns and before its junk ones (ORDER BY ..., which move one place on), and returns
/// the Var that reads it.
///
/// # Safety
/// `rte` is the subquery entry at `varno` of a valid Query, its payload at column
/// `payload_col` (0-based); `func` as in [`routing_call`].
unsafe fn select_column(
    rte: *mut pg_sys::RangeTblEntry,
    varno: i32,
    payload_col: usize,
    func: pg_sys::Oid,
) -> *mut pg_sys::Expr {
    // SAFETY: the caller's contract; the target list is rebuilt with PostgreSQL's own
    // functions.
    unsafe {
        let sub = (*rte).subquery;
        let tlist = (*sub).targetList;
        let source: *mut pg_sys::TargetEntry = nth(tlist, payload_col);
        let columns = (0..len(tlist)).filter(|&i| !(*nth::<pg_sys::TargetEntry>(tlist, i)).resjunk).count();
        let attno = (columns + 1) as pg_sys::AttrNumber;
        let column = pg_sys::makeTargetEntry(
            routing_call(func, (*source).expr),
            attno,
            pg_sys::pstrdup(c"call_id".as_ptr()),
            false,
        );
        let mut rebuilt: *mut pg_sys::List = std::ptr::null_mut();
        for i in 0..len(tlist) {
            let te: *mut pg_sys::TargetEntry = nth(tlist, i);
            if i == columns {
                rebuilt = pg_sys::lappend(rebuilt, column as *mut _);
            }
            if (*te).resjunk {
                (*te).resno += 1;
            }
            rebuilt = pg_sys::lappend(rebuilt, te as *mut _);
        }
        if columns == len(tlist) {
            rebuilt = pg_sys::lappend(rebuilt, column as *mut _);
        }
        (*sub).targetList = rebuilt;
        call_id_var(rte, varno, attno)
    }
}

/// Adds the target entry `call_id = value` to the INSERT, in attribute order (the planner
/// relies on it).
///
/// # Safety
/// `parse` is a valid INSERT Query; `value` a valid int8 expression.
unsafe fn add_target(parse: *mut pg_sys::Query, value: *mut pg_sys::Expr, call_attno: pg_sys::AttrNumber) {
    // SAFETY: the caller's contract; the target list is rebuilt with PostgreSQL's own
    // functions.
    unsafe {
        let tlist = (*parse).targetList;
        let te = pg_sys::makeTargetEntry(value, call_attno, pg_sys::pstrdup(c"call_id".as_ptr()), false);
        let mut rebuilt: *mut pg_sys::List = std::ptr::null_mut();
        let mut placed = false;
        for i in 0..len(tlist) {
            let old: *mut pg_sys::TargetEntry = nth(tlist, i);
            if !placed && ((*old).resjunk || (*old).resno > call_attno) {
                rebuilt = pg_sys::lappend(rebuilt, te as *mut _);
                placed = true;
            }
            rebuilt = pg_sys::lappend(rebuilt, old as *mut _);
        }
        if !placed {
            rebuilt = pg_sys::lappend(rebuilt, te as *mut _);
        }
        (*parse).targetList = rebuilt;
    }
}

/// The column `expr` reads, when it is a column of a range table entry of the query itself:
/// that entry, its index and the column's (0-based).
///
/// # Safety
/// `parse` is a valid Query and `expr` one of its target list's expressions.
unsafe fn column_of(
    parse: *mut pg_sys::Query,
    expr: *mut pg_sys::Expr,
) -> Option<(*mut pg_sys::RangeTblEntry, i32, usize)> {
    // SAFETY: the caller's contract; a Var's varno indexes the query's range table.
    unsafe {
        if (*(expr as *mut pg_sys::Node)).type_ != pg_sys::NodeTag::T_Var {
            return None;
        }
        let var = expr as *mut pg_sys::Var;
        if (*var).varlevelsup != 0 || (*var).varno <= 0 || (*var).varno as usize > len((*parse).rtable) {
            return None;
        }
        if (*var).varattno <= 0 {
            return None;
        }
        let rte: *mut pg_sys::RangeTblEntry = nth((*parse).rtable, (*var).varno as usize - 1);
        Some((rte, (*var).varno, (*var).varattno as usize - 1))
    }
}

/// When `expr` is a column of the SELECT of an INSERT ... SELECT (whose own columns come
/// before its junk ones): that range table entry, its index and the column's (0-based).
///
/// # Safety
/// As [`column_of`].
unsafe fn subquery_rte(
    parse: *mut pg_sys::Query,
    expr: *mut pg_sys::Expr,
) -> Option<(*mut pg_sys::RangeTblEntry, i32, usize)> {
    // SAFETY: the caller's contract; a subquery's target list is a List of TargetEntry.
    unsafe {
        let (rte, varno, col) = column_of(parse, expr)?;
        if (*rte).rtekind != pg_sys::RTEKind::RTE_SUBQUERY || (*rte).subquery.is_null() {
            return None;
        }
        let tlist = (*(*rte).subquery).targetList;
        let columns = (0..len(tlist)).take_while(|&i| !(*nth::<pg_sys::TargetEntry>(tlist, i)).resjunk).count();
        let ordered = (columns..len(tlist)).all(|i| (*nth::<pg_sys::TargetEntry>(tlist, i)).resjunk);
        (ordered && col < columns).then_some((rte, varno, col))
    }
}

/// When `expr` is a column of the query's VALUES list: that range table entry, its index
/// and the column's (0-based).
///
/// # Safety
/// As [`column_of`].
unsafe fn values_rte(
    parse: *mut pg_sys::Query,
    expr: *mut pg_sys::Expr,
) -> Option<(*mut pg_sys::RangeTblEntry, i32, usize)> {
    // SAFETY: the caller's contract.
    unsafe { column_of(parse, expr).filter(|(rte, _, _)| (**rte).rtekind == pg_sys::RTEKind::RTE_VALUES) }
}
