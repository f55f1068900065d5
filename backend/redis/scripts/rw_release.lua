-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- holds nothing (expired, released, unknown). Wakes whoever may go now.
local now = now_ms()
local hs = rw_live(now)
if not redis.call('HGET', holders, ARGV[1]) then return 0 end
local left = rw_drop(hs, ARGV[1])
rw_keep(left, now)
rw_wake(left, rw_waiters(now), ARGV[2])
return 1
