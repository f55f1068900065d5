-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- does not hold the lock.
if redis.call('HGET', lock, 'id') ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
wake(now_ms(), ARGV[2])
return 1
