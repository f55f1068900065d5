-- What an observer reads: the holder, after removing (and logging) a grant
-- whose deadline passed, with the last entry of the event log, in one step.
-- Returns {token (0: free), owner, value, expires ms, now ms, waiters,
-- last entry id ('0-0': none), its n, its kind, its token, lock-delay's
-- end ms (0: none)}. An expired grant inside its lock-delay reads as free.
local now = now_ms()
reap(now)
local h, delayed = holder(now, 'owner', 'value')
local n = redis.call('ZCOUNT', beats, '(' .. now, '+inf')
local last = last_event() or {id = '0-0', n = '0', e = '', t = '0'}
local du = 0
if delayed then du = delayed[1] end
if not h then
  return {0, '', '', 0, now, n, last.id, tonumber(last.n), last.e, tonumber(last.t) or 0, du}
end
return {tonumber(h[4]) or 0, h[5] or '', h[6] or '', deadline(h[1], h[2]) or 0, now, n,
  last.id, tonumber(last.n), last.e, tonumber(last.t) or 0, 0}
