#!/usr/bin/python3
"""check_dashboard.py - etc/grafana/kvprefix-dashboard.json against Grafana's importer
and against the series the real daemon serves.

  check_dashboard.py DASHBOARD --daemon KVPREFIXD --mkmodel KVPREFIX-MKMODEL

1. Structure Grafana's import needs: a title and uid, schemaVersion, id null, the
   DS_PROMETHEUS input (__inputs) and __requires naming every panel type; panels (rows'
   too) with unique ids and a gridPos inside 24 columns, none overlapping; every panel's
   targets with a refId and an expr; every datasource reference resolves to the input or
   to the templated datasource variable (which defaults to the input); every $variable
   an expr uses is one of the dashboard's or Grafana's own; an `instance` variable.
2. Every metric name of every expr (and of the variables' queries) is one the daemon
   exposes: kvprefixd is started here in engine mode with every tier on (a model made by
   kvprefix-mkmodel, --disk-cache, --host-cache-mb, --redis to a socket nobody serves,
   which the daemon retries in the background) and publishing KV events, with a second,
   index-only one following them (the fleet index), and their /metrics read over Unix
   sockets; or one of PENDING_SERIES below, for a build without their option. A {{label}} of a legend is a label of a
   series the expr reads; every series a panel reads is narrowed to the `instance`
   variable.
3. Where promtool is installed, `promtool check rules` parses every expr, Grafana's
   variables replaced by values.
4. The checks can fail: each of a list of broken copies of the dashboard (a misspelt
   series, a repeated panel id, a data source of one Grafana, ...) must be refused.

Standard library only. Exit status 0: passed; 1: a check failed (each failure printed).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Series of the KV-event publisher and of the fleet index, by the option that turns
# them on. The dashboard charts them whether or not a build has that option: for a
# kvprefixd whose --help does not list it, these names pass unseen. One that lists it
# is run with it (scrape_daemons), and then its names must be served like any other.
# Keep this to exactly these names; anything else must come from the daemon's /metrics.
PENDING_SERIES = {
    "--kv-events": {   # counters
        "kvprefix_kv_events_batches_total",
        "kvprefix_kv_events_total",
        "kvprefix_kv_events_dropped_total",
        "kvprefix_kv_events_replays_total",
    },
    "--kv-events-sub": {   # one gauge, then counters
        "kvprefix_fleet_instances",
        "kvprefix_fleet_events_applied_total",
        "kvprefix_fleet_events_malformed_total",
        "kvprefix_fleet_gaps_total",
        "kvprefix_fleet_replays_total",
    },
}

# PromQL's functions and aggregations (Prometheus 2.x), and its keywords.
PROMQL_FUNCTIONS = set("""
abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max
clamp_min count count_over_time count_values day_of_month day_of_week day_of_year
days_in_month delta deriv exp floor group histogram_avg histogram_count
histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum
holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10
log2 mad_over_time max max_over_time min min_over_time minute month predict_linear
present_over_time quantile quantile_over_time rate resets round scalar sgn sort
sort_desc sort_by_label sort_by_label_desc sqrt stddev stddev_over_time stdvar
stdvar_over_time sum sum_over_time time timestamp topk vector year acos acosh asin asinh
atan atanh cos cosh deg pi rad sin sinh tan tanh limitk limit_ratio
""".split())
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on",
                   "ignoring", "group_left", "group_right", "inf", "nan", "start", "end"}
# Grafana's own variables an expr may use.
GRAFANA_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                "__range_ms", "__dashboard", "__from", "__to", "__org", "__user"}
# What they stand for when promtool parses an expr.
PROMTOOL_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h",
                   "__range_s": "3600", "__interval_ms": "15000", "__range_ms": "3600000"}

failures = []
quiet = False   # the self-test's mutants: count failures, print none


def fail(msg):
    failures.append(msg)
    if not quiet:
        print("FAIL: " + msg)


# ---- 1: structure ----------------------------------------------------------------

def all_panels(dash):
    """Every panel, the panels of collapsed rows included, in order."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        for q in p.get("panels", []) if p.get("type") == "row" else []:
            out.append(q)
    return out


def ds_variables(dash):
    """The datasource variables: name -> plugin type they pick from."""
    out = {}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            out[v.get("name")] = v.get("query")
    return out


def check_datasource_ref(ref, where, inputs, dsvars):
    """A datasource reference resolves to the input or the datasource variable."""
    if isinstance(ref, str):
        ref = {"uid": ref}
    if not isinstance(ref, dict):
        fail("%s: datasource %r is neither a string nor an object" % (where, ref))
        return
    uid, typ = ref.get("uid"), ref.get("type")
    if typ == "grafana" and uid == "-- Grafana --":
        return   # the built-in annotations' source
    m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid or "")
    if not m:
        fail("%s: datasource uid %r names a data source of one Grafana only: use "
             "${DS_PROMETHEUS} or the datasource variable" % (where, uid))
        return
    name = m.group(1) or m.group(2)
    if name in inputs:
        kind = inputs[name]
    elif name in dsvars:
        kind = dsvars[name]
    else:
        fail("%s: datasource %r is neither an __inputs entry nor a datasource variable"
             % (where, uid))
        return
    if typ is not None and typ != kind:
        fail("%s: datasource type %r, but %s is %r" % (where, typ, name, kind))


def walk_datasources(node, where, inputs, dsvars):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                check_datasource_ref(v, where, inputs, dsvars)
            else:
                walk_datasources(v, where, inputs, dsvars)
    elif isinstance(node, list):
        for v in node:
            walk_datasources(v, where, inputs, dsvars)


def check_structure(dash, text):
    for key, typ in (("title", str), ("uid", str), ("schemaVersion", int),
                     ("panels", list), ("templating", dict), ("__inputs", list),
                     ("__requires", list)):
        if not isinstance(dash.get(key), typ):
            fail("top level: %s missing or not a %s" % (key, typ.__name__))
    if failures:
        return
    if not dash["title"].strip():
        fail("the title is empty")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]):
        fail("uid %r: 1 to 40 of [A-Za-z0-9_-]" % dash["uid"])
    if dash["schemaVersion"] < 36:
        fail("schemaVersion %d is older than Grafana 9's" % dash["schemaVersion"])
    if dash.get("id") is not None:
        fail("id must be null: the importer gives the dashboard its own")

    # the inputs: DS_PROMETHEUS, each input used, each ${DS_...} an input
    inputs = {}
    for i in dash["__inputs"]:
        if i.get("type") != "datasource" or not i.get("name") or not i.get("pluginId"):
            fail("__inputs entry %r: wants name, type datasource and pluginId" % i)
            continue
        inputs[i["name"]] = i["pluginId"]
    if inputs.get("DS_PROMETHEUS") != "prometheus":
        fail("__inputs has no DS_PROMETHEUS input of plugin prometheus")
    body = json.dumps({k: v for k, v in dash.items() if k != "__inputs"})
    for name in inputs:
        if "${%s}" % name not in body:
            fail("__inputs: %s is never used" % name)
    for name in set(re.findall(r"\$\{(DS_\w+)\}", text)):
        if name not in inputs:
            fail("${%s} is used but is not in __inputs" % name)

    # the templating: unique names, the datasource variable defaulting to the input
    names = [v.get("name") for v in dash["templating"].get("list", [])]
    if len(names) != len(set(names)):
        fail("templating: variable names repeat: %s" % names)
    dsvars = ds_variables(dash)
    for name, kind in dsvars.items():
        v = next(x for x in dash["templating"]["list"] if x.get("name") == name)
        if kind != "prometheus":
            fail("datasource variable %s picks %r, not prometheus" % (name, kind))
        cur = (v.get("current") or {}).get("value")
        if cur not in ("${%s}" % n for n in inputs):
            fail("datasource variable %s: its current value %r is not an input, so an "
                 "import would not select the chosen data source" % (name, cur))
    inst = [v for v in dash["templating"].get("list", []) if v.get("name") == "instance"]
    if not inst or inst[0].get("type") != "query":
        fail("templating: no `instance` query variable")

    # __requires: Grafana, Prometheus and every panel type
    req = {(r.get("type"), r.get("id")) for r in dash["__requires"]}
    for need in (("grafana", "grafana"), ("datasource", "prometheus")):
        if need not in req:
            fail("__requires lacks %s %s" % need)

    # panels: ids, gridPos, targets
    panels = all_panels(dash)
    if not panels:
        fail("no panels")
    ids = [p.get("id") for p in panels]
    for i in ids:
        if not isinstance(i, int) or i <= 0:
            fail("panel id %r is not a positive integer" % (i,))
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        fail("panel ids repeat: %s" % sorted(dup, key=str))
    boxes = []
    for p in panels:
        where = "panel %s %r" % (p.get("id"), p.get("title"))
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            fail("%s: gridPos wants integers h, w, x, y" % where)
            continue
        if g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            fail("%s: gridPos %s is outside 24 columns" % (where, g))
        if not isinstance(p.get("title"), str) or not p.get("type"):
            fail("%s: wants a title and a type" % where)
        in_collapsed = p not in dash["panels"]
        if not in_collapsed:
            for (q, h) in boxes:
                if (g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"] and
                        g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]):
                    fail("%s overlaps panel %s" % (where, q))
            boxes.append((p.get("id"), g))
        if p.get("type") == "row":
            continue
        if ("panel", p.get("type")) not in req:
            fail("%s: panel type %r is not in __requires" % (where, p.get("type")))
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            fail("%s: no targets" % where)
            continue
        if p.get("datasource") is None:
            fail("%s: no datasource" % where)
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            fail("%s: refIds missing or repeated: %s" % (where, refs))
        for t in targets:
            if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                fail("%s: target %s has no expr" % (where, t.get("refId")))
    walk_datasources(dash, "dashboard", inputs, dsvars)


# ---- 2: metric names ---------------------------------------------------------------

def strip_expr(expr):
    """The expr with strings, ranges, label matchers, grouping labels and Grafana's
    variables taken out: what is left of an identifier is a function, a keyword or a
    metric name."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[\w$]+", "", s)
    s = re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]", "0", s)
    return s


def expr_names(expr, where):
    """Metric names an expr reads; unknown functions are failures."""
    names = []
    s = strip_expr(expr)
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)", s):
        ident = m.group(1)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            if ident not in PROMQL_FUNCTIONS:
                fail("%s: %s() is not a PromQL function" % (where, ident))
        elif ident.lower() not in PROMQL_KEYWORDS:
            names.append(ident)
    return names


def expr_variables(expr):
    return set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", expr))


def queries(dash):
    """(where, expr, legend) of every panel target and of every query variable."""
    out = []
    for p in all_panels(dash):
        for t in p.get("targets") or []:
            if isinstance(t.get("expr"), str):
                out.append(("panel %s %r target %s" % (p.get("id"), p.get("title"),
                                                     t.get("refId")),
                            t["expr"], t.get("legendFormat") or ""))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*", q or "")
        if not m:
            fail("variable %s: query %r is not label_values(SERIES, LABEL)"
                 % (v.get("name"), q))
            continue
        out.append(("variable %s" % v.get("name"), m.group(1), "{{%s}}" % m.group(2)))
    return out


def parse_page(text):
    """/metrics text -> {series name: set of its label names}, each family's series."""
    series, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4:
                types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][\w:]*)(\{(.*)\})?\s", line)
        if not m:
            fail("/metrics: a line that is not a sample: %r" % line)
            continue
        labels = set(re.findall(r'(\w+)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    for name, typ in types.items():
        suffixes = ("_bucket", "_sum", "_count") if typ == "histogram" else ("",)
        for suf in suffixes:
            series.setdefault(name + suf, set())
        if typ == "histogram":
            series[name + "_bucket"].add("le")
    return series


def http_get_unix(path, url="/metrics", timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % url).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " not in status + " ":
        raise RuntimeError("GET %s: %s" % (url, status))
    return body.decode("utf-8")


class Daemon:
    """A kvprefixd started with argv plus --socket and --metrics-listen in tmp."""

    def __init__(self, tmp, name, argv):
        self.name = name
        self.msock = os.path.join(tmp, name + "-metrics.sock")
        self.log = os.path.join(tmp, name + ".log")
        argv = argv + ["--socket", os.path.join(tmp, name + ".sock"),
                       "--metrics-listen", self.msock, "--log-level", "info"]
        with open(self.log, "wb") as lf:
            self.proc = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT)

    def print_log(self):
        if os.path.exists(self.log):
            sys.stdout.write("--- %s log:\n" % self.name)
            sys.stdout.write(open(self.log, errors="replace").read())

    def scrape(self, timeout=30):
        """Its /metrics, once it serves them; RuntimeError if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if os.path.exists(self.msock):
                try:
                    return http_get_unix(self.msock)
                except (OSError, RuntimeError):
                    pass
            time.sleep(0.05)
        raise RuntimeError("%s served no /metrics (exit status %s)"
                           % (self.name, self.proc.poll()))

    def stop(self):
        """SIGTERM; a failure unless it exits 0 within 15 s."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
            if rc != 0:
                fail("%s exited with status %d at SIGTERM" % (self.name, rc))
                self.print_log()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("%s did not stop within 15 s of SIGTERM" % self.name)


def daemon_options(daemon):
    """The long options kvprefixd --help lists."""
    r = subprocess.run([daemon, "--help"], capture_output=True, text=True)
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.stdout + r.stderr))


def scrape_daemons(daemon, mkmodel):
    """/metrics of kvprefixd with every series family on: engine mode with every tier,
    publishing KV events where it can; and, where it can, an index-only daemon following
    those events (the fleet index). The pages joined, and the options --help lists;
    None (a failure said) when a daemon does not serve."""
    tmp = tempfile.mkdtemp(prefix="kvp-dash-")
    daemons = []
    try:
        opts = daemon_options(daemon)
        model = os.path.join(tmp, "model.gguf")
        subprocess.run([mkmodel, "--out", model, "--vocab", "300", "--dim", "64",
                        "--layers", "1", "--heads", "2", "--kv-heads", "1", "--ffn", "128",
                        "--ctx", "256", "--quiet"], check=True)
        os.mkdir(os.path.join(tmp, "disk"))
        events = "ipc://" + os.path.join(tmp, "events.sock")
        argv = [daemon, "--config", "", "--model", model, "--backend", "cpu",
                "--kv-dtype", "f32", "--threads", "1", "--block-tokens", "16",
                "--capacity-blocks", "64", "--disk-cache", os.path.join(tmp, "disk"),
                "--disk-cache-gb", "1", "--host-cache-mb", "1",
                "--redis", "unix:" + os.path.join(tmp, "none.sock")]
        if "--kv-events" in opts:
            argv += ["--kv-events", events]
        daemons.append(Daemon(tmp, "kvprefixd", argv))
        if "--kv-events-sub" in opts:
            daemons.append(Daemon(tmp, "kvprefixd-fleet",
                                  [daemon, "--config", "", "--index-only",
                                   "--block-tokens", "16", "--kv-events-sub", events]))
        return "".join(d.scrape() for d in daemons), opts
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        fail("starting kvprefixd: %s" % e)
        for d in daemons:
            d.print_log()
        return None, set()
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def check_names(dash, exposed, pending):
    varnames = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    used = set()
    for where, expr, legend in queries(dash):
        names = expr_names(expr, where)
        if not names:
            fail("%s: reads no series: %s" % (where, expr))
        for name in names:
            used.add(name)
            if name not in exposed and name not in pending:
                fail("%s: %s is not a series kvprefixd serves" % (where, name))
        if where.startswith("panel"):
            for m in re.finditer(r"(?<![\w:])(%s)\s*(\{[^}]*\})?" % "|".join(
                    re.escape(n) for n in sorted(set(names), key=len, reverse=True)), expr):
                if 'instance=~"$instance"' not in (m.group(2) or ""):
                    fail("%s: %s is not narrowed to the instance variable "
                         '({instance=~"$instance"})' % (where, m.group(1)))
        for groups in expr_variables(expr):
            var = next(g for g in groups if g)
            if var not in varnames and var not in GRAFANA_VARS:
                fail("%s: $%s is not a variable of the dashboard" % (where, var))
        known = set().union(*(exposed.get(n, set()) for n in names)) | {"instance", "job"}
        if all(n in pending and n not in exposed for n in names):
            continue   # their labels are not known here
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if label not in known:
                fail("%s: legend {{%s}}: no series of %s has that label"
                     % (where, label, ", ".join(sorted(set(names)))))
    return used


# ---- 3: promtool ---------------------------------------------------------------------

def promtool_check(dash):
    tool = shutil.which("promtool")
    if not tool:
        print("note: promtool is not installed: the exprs are not parsed by Prometheus")
        return
    rules = []
    for i, (where, expr, _) in enumerate(queries(dash)):
        def value(m):
            var = next(g for g in m.groups() if g)
            return PROMTOOL_VALUES.get(var, ".*")
        e = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)
        rules.append({"record": "kvprefix_dashboard:query_%d" % i, "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        # YAML is a superset of JSON: promtool reads this as a rules file
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        path = f.name
    try:
        r = subprocess.run([tool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            fail("promtool check rules:\n%s%s" % (r.stdout, r.stderr))
        else:
            print("ok: promtool parses all %d exprs" % len(rules))
    finally:
        os.unlink(path)


def first_target(dash, pred=lambda t: True):
    for p in all_panels(dash):
        for t in p.get("targets") or []:
            if pred(t):
                return p, t
    raise LookupError("no such target")


def mutate_expr(old, new):
    def m(d):
        _, t = first_target(d, lambda t: old in t.get("expr", ""))
        t["expr"] = t["expr"].replace(old, new, 1)
    return m


def mutate_panel(key, value, index=1):
    def m(d):
        p = [p for p in all_panels(d) if p.get("type") != "row"][index]
        p[key] = value(d) if callable(value) else value
    return m


def set_legend(d):
    first_target(d)[1]["legendFormat"] = "{{no_such_label}}"


def drop_instance(d):
    d["templating"]["list"] = [v for v in d["templating"]["list"]
                               if v.get("name") != "instance"]


def ds_current(d):
    v = next(v for v in d["templating"]["list"] if v.get("type") == "datasource")
    v["current"]["value"] = "prometheus"


# Broken copies of the dashboard, each of which the checks must refuse.
MUTANTS = [
    ("a misspelt series", mutate_expr("kvprefix_hit_tokens_total", "kvprefix_hit_token_total")),
    ("a misspelt pending series", mutate_expr("kvprefix_kv_events_total",
                                              "kvprefix_kv_event_total")),
    ("a function PromQL lacks", mutate_expr("rate(", "rates(")),
    ("an unknown variable", mutate_expr("$instance", "$instanse")),
    ("a series of every instance", mutate_expr('{instance=~"$instance"}', "")),
    ("a legend label no series has", set_legend),
    ("a repeated panel id", mutate_panel("id", lambda d: all_panels(d)[0]["id"])),
    ("overlapping panels", mutate_panel("gridPos", lambda d: dict(
        [p for p in all_panels(d) if p.get("type") != "row"][0]["gridPos"]))),
    ("a panel past 24 columns", mutate_panel("gridPos", {"h": 4, "w": 12, "x": 16, "y": 0})),
    ("a data source of one Grafana", mutate_panel(
        "datasource", {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"})),
    ("a panel type not in __requires", mutate_panel("type", "piechart")),
    ("a target without an expr", lambda d: first_target(d)[1].pop("expr")),
    ("no __inputs", lambda d: d.pop("__inputs")),
    ("no instance variable", drop_instance),
    ("the datasource variable not defaulting to the input", ds_current),
    ("an id that is not null", lambda d: d.__setitem__("id", 7)),
]


def self_test(dash, exposed, pending):
    """Each mutant fails the checks (those of names against exposed, what the daemon
    served, once the structure passes)."""
    global failures, quiet
    ok = True
    kept, quiet = failures, True
    try:
        for what, mutate in MUTANTS:
            d = json.loads(json.dumps(dash))
            mutate(d)
            failures = []
            check_structure(d, json.dumps(d))
            if not failures:
                check_names(d, exposed, pending)
            if not failures:
                ok = False
                kept.append("self-test: the checks accept %s" % what)
                print("FAIL: self-test: the checks accept %s" % what)
    finally:
        failures, quiet = kept, False
    if ok:
        print("ok: self-test: all %d broken copies refused" % len(MUTANTS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dashboard")
    ap.add_argument("--daemon", default=os.environ.get("KVP_DAEMON_PATH"))
    ap.add_argument("--mkmodel", default=os.environ.get("KVP_MKMODEL_PATH"))
    a = ap.parse_args()
    if not a.daemon or not a.mkmodel:
        ap.error("--daemon and --mkmodel are needed (or KVP_DAEMON_PATH, KVP_MKMODEL_PATH)")

    with open(a.dashboard, encoding="utf-8") as f:
        text = f.read()
    try:
        dash = json.loads(text)
    except ValueError as e:
        print("FAIL: %s is not JSON: %s" % (a.dashboard, e))
        return 1
    check_structure(dash, text)
    if not failures:
        print("ok: structure (%d panels, %d queries)" % (len(all_panels(dash)),
                                                         len(queries(dash))))

    page, opts = scrape_daemons(a.daemon, a.mkmodel)
    if page is not None:
        exposed = parse_page(page)
        pending = set().union(*(names for opt, names in PENDING_SERIES.items()
                                if opt not in opts))
        families = sorted(n for n in exposed if n.startswith("kvprefix_"))
        print("ok: kvprefixd serves %d series names" % len(families))
        used = check_names(dash, exposed, pending)
        unseen = sorted(n for n in used if n in pending and n not in exposed)
        if unseen:
            print("note: allowed, their option not in this kvprefixd: %s" % ", ".join(unseen))
        unused = [n for n in families if n not in used and
                  not any(n == u + s for u in used for s in ("_bucket", "_sum", "_count"))]
        if unused:
            print("note: served but not charted: %s" % ", ".join(unused))
        self_test(dash, exposed, pending)
    promtool_check(dash)

    if failures:
        print("check_dashboard: %d failure(s)" % len(failures))
        return 1
    print("check_dashboard: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
