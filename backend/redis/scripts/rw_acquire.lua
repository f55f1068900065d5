-- ARGV: lease id, owner, ttl ms, waiter id ('' for a single try), heartbeat
-- timeout ms, mode ('r' or 'w'). A reader is granted when no writer holds
-- and no live writer is ahead of it in the queue; a writer when nobody
-- holds and nobody is ahead. A single try never jumps the queue.
-- Returns {granted (1 or 0), token, expires ms, now ms, the earliest
-- holder's deadline (0: none)}.
local id, owner, ttl, waiter, beat, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
local hs = live(now)
local mine = redis.call('HGET', holders, id)
if mine then
  -- Our own grant (a re-run after a lost reply).
  local r = parse(mine)
  return {1, r.token, r.exp, now, 0}
end
local ws = waiters(now)
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
  ok = #hs == 0 and not anyone_ahead
else
  ok = not writer_holds(hs) and not writer_ahead
end
if ok then
  if queued then
    redis.call('LREM', queue, 0, me)
    redis.call('ZREM', beats, me)
  end
  local token = redis.call('INCR', fence)
  local exp = now + ttl
  redis.call('HSET', holders, id, record(exp, mode, token, ttl, owner))
  hs[#hs + 1] = {exp = exp}
  keep(hs, now)
  return {1, token, exp, now, 0}
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
return {0, 0, 0, now, first}
