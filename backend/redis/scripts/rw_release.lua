-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- holds nothing (expired, released, unknown). Wakes whoever may go now.
local now = now_ms()
local hs = live(now)
if not redis.call('HGET', holders, ARGV[1]) then return 0 end
redis.call('HDEL', holders, ARGV[1])
local left = {}
for _, h in ipairs(hs) do
  if h.id ~= ARGV[1] then left[#left + 1] = h end
end
keep(left, now)
wake(left, waiters(now), ARGV[2])
return 1
