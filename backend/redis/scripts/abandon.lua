-- An acquire gives up (wait over, context ended, error). ARGV: waiter id
-- ('' when it never queued), lease id (released if a grant raced with the
-- give-up), wake channel, idempotent ('1': a grant under the lease id stays,
-- for a retry with the same idempotency key to find; without one the
-- record KEYS[6] goes). If the lock is left free, the next waiter is woken
-- (the leaver may have been the head that was just woken).
if ARGV[1] ~= '' then
  redis.call('LREM', queue, 0, ARGV[1])
  redis.call('ZREM', beats, ARGV[1])
end
local idempotent = ARGV[4] == '1'
local now = now_ms()
reap(now)
local h, delayed = holder(now, 'id', 'owner', 'value')
local id = h and h[5]
if id == ARGV[2] then
  if not idempotent then
    redis.call('DEL', lock)
    if h[2] then redis.call('SREM', h[2] .. ':g', base_of()) end
    emit(now, 'r', h[4], h[6], h[7], 0)
    id = false
  end
elseif idempotent then
  redis.call('DEL', KEYS[6])
end
if not id and not delayed then wake(now, ARGV[3]) end
return 1
