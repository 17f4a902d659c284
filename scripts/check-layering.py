#!/usr/bin/env python3
"""The layering rules of README's Layout section, checked on the source (run by ./scripts/test.sh).

An edge a -> b when file a names an item defined in file b (re-exports followed to the defining
file). Fails when two files import each other (directly or around a loop), when the embeddable
cache (src/cache/) reaches the socket server, HTTP, the CLI, the command layer or the crate
root's wiring, or when the client (src/client.rs) reaches anything but protocol/, error.rs and
backoff.rs.
"""

import os,re,sys
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')
root=os.path.normpath(root)
files=[os.path.join(d,f) for d,_,fs in os.walk(root) for f in fs if f.endswith('.rs')]
def modpath(f):
    p=f[len(root)+1:-3].split('/')
    if p[-1]=='mod': p=p[:-1]
    if p in (['lib'],['main']): p=[]
    return tuple(p)
def strip(src):
    src=src.split('#[cfg(test)]\nmod tests')[0]
    return re.sub(r'//[^\n]*','',src)
text={f:strip(open(f).read()) for f in files}
bymod={modpath(f):f for f in files if not f.endswith('main.rs')}
defs={}
for f in files:
    for m in re.finditer(r'^\s*(?:pub(?:\([a-z ]+\))? )?(?:async )?(?:struct|enum|trait|fn|type|const|static|mod) ([A-Za-z_][A-Za-z_0-9]*)',text[f],re.M):
        defs.setdefault(f,set()).add(m.group(1))
    # macro-defined items
    if 'macro_rules! commands' in text[f]:
        defs.setdefault(f,set()).update({'Command','Op'})
def children(mp):
    return [f for p,f in bymod.items() if len(p)==len(mp)+1 and p[:len(mp)]==mp]
def definer(mp, name):
    f=bymod.get(mp)
    if f and name in defs.get(f,()) : return f
    for c in children(mp):
        if name in defs.get(c,()) and modpath(c)[-1]!=name: return c
    return f
def resolve(cur, parts):
    if parts[0] in('crate','nearkv'): base=[]; parts=parts[1:]
    elif parts[0]=='super':
        base=list(cur)
        while parts and parts[0]=='super': base=base[:-1]; parts=parts[1:]
    elif parts[0]=='self': base=list(cur); parts=parts[1:]
    else: return []
    mp=tuple(base); i=0
    while i<len(parts) and mp+(parts[i],) in bymod: mp=mp+(parts[i],); i+=1
    rest=parts[i:]
    return (mp, rest)
edges={}
for f in files:
    cur=modpath(f); src=text[f]; es=set()
    # `nearkv::` is the library only in the binary's files; in the library it is resp::nearkv.
    in_binary = f.endswith('main.rs') or '/cli/' in f or '/bench/' in f
    roots = 'crate|super|self|nearkv' if in_binary else 'crate|super|self'
    for m in re.finditer(r'\b((?:' + roots + r')(?:::[A-Za-z_][A-Za-z_0-9]*)*)(::\{([^}]*)\})?', src):
        if '::' not in m.group(0): continue
        r=resolve(cur, m.group(1).split('::'))
        if not r: continue
        mp,rest=r
        names=[rest[0]] if rest else []
        if m.group(3): names+= [n.strip().split('::')[0].split(' ')[0] for n in m.group(3).split(',') if n.strip()]
        if not names: names=[None]
        for n in names:
            if n in (None,'self'): t=bymod.get(mp)
            elif mp+(n,) in bymod: t=bymod[mp+(n,)]
            else: t=definer(mp,n)
            if t and t!=f: es.add(t)
    if f.endswith(('mod.rs','lib.rs','main.rs')):
        for m in re.finditer(r'^\s*(?:pub(?:\([a-z]+\))? )?use ([a-z_]+)::', src, re.M):
            t=bymod.get(cur+(m.group(1),))
            if t and t!=f: es.add(t)
    edges[f]=es
idx={};low={};st=[];on=set();res=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: res.append(comp)
for v in sorted(edges):
    if v not in idx: sc(v)
rel=lambda f: os.path.relpath(f, os.path.dirname(root))
problems=[]
for r in res:
    problems.append('import cycle: ' + ', '.join(sorted(rel(a) + ' -> ' + '/'.join(sorted(rel(x) for x in edges[a] if x in r)) for a in r)))
def deps(prefix):
    return {(rel(a), rel(b)) for a in edges for b in edges[a] if rel(a).startswith(prefix)}
for a, b in sorted(deps('src/cache/')):
    if b.startswith(('src/server/', 'src/cli/', 'src/bench/', 'src/cmd/')) or b in ('src/http.rs', 'src/lib.rs', 'src/main.rs', 'src/metrics.rs'):
        problems.append(f'the cache must not depend on the sidecar: {a} -> {b}')
for a, b in sorted(deps('src/client.rs')):
    if not (b.startswith('src/protocol/') or b in ('src/error.rs', 'src/backoff.rs')):
        problems.append(f'the client depends only on protocol/ and error.rs: {a} -> {b}')
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f'layering: {len(edges)} files, no import cycles, cache and client within their bounds')
