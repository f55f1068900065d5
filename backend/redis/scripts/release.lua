-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- does not hold the lock (an expired grant inside its lock-delay is not
-- held: its release is refused and lifts nothing).
local now = now_ms()
reap(now)
local h = holder(now, 'id', 'owner', 'value')
if not h or h[5] ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
if h[2] then redis.call('SREM', h[2] .. ':g', base_of()) end
emit(now, 'r', h[4], h[6], h[7], 0)
wake(now, ARGV[2])
return 1
