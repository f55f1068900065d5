-- An acquire gives up (wait over, context ended, error). ARGV: waiter id
-- ('' when it never queued), lease id (released if a grant raced with the
-- give-up), wake channel, idempotent ('1': a grant under the lease id stays,
-- for a retry with the same idempotency key to find; without one the
-- record KEYS[5] goes). If the lock is left free, the next waiter is woken
-- (the leaver may have been the head that was just woken).
if ARGV[1] ~= '' then
  redis.call('LREM', queue, 0, ARGV[1])
  redis.call('ZREM', beats, ARGV[1])
end
local idempotent = ARGV[4] == '1'
local id = redis.call('HGET', lock, 'id')
if id == ARGV[2] then
  if not idempotent then
    redis.call('DEL', lock)
    id = false
  end
elseif idempotent then
  redis.call('DEL', KEYS[5])
end
if not id then wake(now_ms(), ARGV[3]) end
return 1
