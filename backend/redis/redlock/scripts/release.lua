-- KEYS: lock. ARGV: lease id. Returns 1 when released here, else 0.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
