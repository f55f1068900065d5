-- One replica's heartbeat for all its waiters on one read-write lock (as
-- beat.lua; entries "r:<waiter>" / "w:<waiter>"): a writer at the head may
-- go when nobody holds, the readers at the head while no writer holds.
-- Publishes waiter ids, as rw_wake does.
local now = now_ms()
local out, mine = refresh(now)
local first = redis.call('LINDEX', queue, 0)
local head = prune(now)
if not head then return out end
local hs, delays = rw_live(now)
local go_now = {}
if string.sub(head, 1, 2) == 'w:' then
  if #hs == 0 and not rw_blocking(delays, 'w') then go_now = {head} end
elseif not writer_holds(hs) and not rw_blocking(delays, 'r') then
  for _, e in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    if string.sub(e, 1, 2) == 'w:' then break end
    go_now[#go_now + 1] = e
  end
end
for _, e in ipairs(go_now) do
  if mine[e] then
    out[#out + 1] = e
  elseif head ~= first then
    redis.call('PUBLISH', ARGV[2], string.sub(e, 3))
  end
end
return out
