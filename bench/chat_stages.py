#!/usr/bin/env python3
"""Chat delay by stage from bench/file.sh logs kept with FILEBENCH_KEEP=DIR and
RUST_LOG=info,ferry_daemon::chat=debug: python3 bench/chat_stages.py DIR [CASE] (CASE default ff).
Pairs the sender's "outgoing message queued" lines with the receiver's "journaled"/"stored" lines."""
import re,sys,datetime
def parse(path,pat):
    out=[]
    for l in open(path):
        l=re.sub(r'\x1b\[[0-9;]*m','',l)
        if pat in l:
            ts=datetime.datetime.fromisoformat(l.split()[0].rstrip('Z')).timestamp()
            kv=dict(re.findall(r'(\w+)=(\d+)',l))
            out.append((ts,kv))
    return out
d=sys.argv[1]; pre=sys.argv[2] if len(sys.argv)>2 else 'ff'
q=parse(f'{d}/{pre}-a.log','outgoing message queued')
j=parse(f'{d}/{pre}-b.log','incoming message journaled')
s=parse(f'{d}/{pre}-b.log','incoming message stored')
net=[];com=[]
if j:
    # committer lines may cover several messages; match each journaled line to the first stored line after it
    si=0
    for (qa,_),(jb,kv) in zip(q,j):
        net.append((jb-int(kv['journal_us'])/1e6-qa)*1000)
        while si<len(s) and s[si][0]<jb: si+=1
        com.append(((s[si][0] if si<len(s) else jb)-jb)*1000+int(kv['journal_us'])/1000)
else:
    for (qa,_),(sb,kv) in zip(q,s):
        c=int(kv['commit_us']); net.append((sb-c/1e6-qa)*1000); com.append(c/1000)
def st(x):
    x=sorted(x); n=len(x)
    return f"n={n} p50={x[n//2]:.1f} p90={x[int(n*.9)]:.1f} max={x[-1]:.1f}"
print("network+tasks ms", st(net)); print("recv store ms", st(com))
print("series net:", ' '.join(f"{v:.0f}" for v in net))
print("series com:", ' '.join(f"{v:.0f}" for v in com))
