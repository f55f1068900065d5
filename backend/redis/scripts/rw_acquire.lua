-- ARGV: lease id, owner, ttl ms, waiter id ('' for a single try), heartbeat
-- timeout ms, mode ('r' or 'w'), lock-delay ms (0: none). KEYS[5], when given, is the session hash
-- the grant is to live in (ARGV[3] is then unused). A reader is granted
-- when no writer holds and no live writer is ahead of it in the queue; a
-- writer when nobody holds and nobody is ahead. A single try never jumps
-- the queue.
-- Returns {granted (1 or 0), token, expires ms, now ms, the earliest
-- holder's deadline (0: none), ttl ms, in a session (1/0), the session's
-- deadline (0: none), the end of the lock-delay that keeps it out and the
-- expired grant's token (0, 0: none)}; {-4} when the session is over
-- (nothing was done). An expired writer inside its lock-delay keeps both
-- modes out, an expired reader writers only.
local id, owner, ttl, waiter, beat, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local skey = KEYS[5]
local delay = tonumber(ARGV[7]) or 0
local now = now_ms()
local hs, delays = rw_live(now)
local blocking = rw_blocking(delays, mode)
for _, h in ipairs(hs) do
  if h.id == id then
    -- Our own grant (a re-run after a lost reply).
    local ins = 0
    if h.sess then ins = 1 end
    return {1, h.token, h.exp, now, 0, h.ttl, ins, 0, 0, 0}
  end
end
-- The session, when the grant is to live in one: over means nothing is
-- granted or queued in it (never resurrected).
local sexp, sttl, sgc = 0, 0, 0
if skey then
  sexp, sttl, sgc = session_info(skey)
  if sexp <= now then return {-4} end
end
local ws = rw_waiters(now)
local me = mode .. ':' .. waiter
local queued, writer_ahead, anyone_ahead = false, false, false
for _, e in ipairs(ws) do
  if waiter ~= '' and e == me then
    queued = true
    break
  end
  anyone_ahead = true
  if string.sub(e, 1, 2) == 'w:' then writer_ahead = true end
end
local ok
if mode == 'w' then
  ok = #hs == 0 and not anyone_ahead and not blocking
else
  ok = not writer_holds(hs) and not writer_ahead and not blocking
end
if ok then
  if queued then
    redis.call('LREM', queue, 0, me)
    redis.call('ZREM', beats, me)
  end
  local token = redis.call('INCR', fence)
  if skey then
    -- Valid while the session is; the hash's own expiry is only a bound
    -- for garbage, past the session's deadline (session_renew.lua moves it
    -- on before the session can outlive it).
    local gc = math.max(sgc, sexp + keep_ms)
    redis.call('HSET', holders, id, rw_record(0, mode, token, 0, delay, owner), id .. ':s', skey)
    local set = skey .. ':g'
    redis.call('SADD', set, rw_base() .. id)
    redis.call('PEXPIRE', set, sexp - now)
    hs[#hs + 1] = {exp = sexp, gc = gc, d = delay}
    rw_keep(hs, now, delays)
    return {1, token, sexp, now, 0, sttl, 1, 0, 0, 0}
  end
  local exp = now + ttl
  redis.call('HSET', holders, id, rw_record(exp, mode, token, ttl, delay, owner))
  hs[#hs + 1] = {exp = exp, d = delay}
  rw_keep(hs, now, delays)
  return {1, token, exp, now, 0, ttl, 0, 0, 0, 0}
end
if waiter ~= '' then
  if not queued then redis.call('RPUSH', queue, me) end
  redis.call('ZADD', beats, now + beat, me)
  -- Queue keys vanish on their own once every waiter stopped beating.
  redis.call('PEXPIRE', queue, beat)
  redis.call('PEXPIRE', beats, beat)
end
local first = 0
for _, h in ipairs(hs) do
  if first == 0 or h.exp < first then first = h.exp end
end
if blocking then return {0, 0, 0, now, first, 0, 0, sexp, blocking.ends, blocking.token} end
return {0, 0, 0, now, first, 0, 0, sexp, 0, 0}
