-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- does not hold the lock.
local now = now_ms()
reap(now)
local h = redis.call('HMGET', lock, 'id', 'token', 'owner', 'value', 's')
if h[1] ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
if h[5] then redis.call('SREM', h[5] .. ':g', base_of()) end
emit(now, 'r', h[2], h[3], h[4], 0)
wake(now, ARGV[2])
return 1
