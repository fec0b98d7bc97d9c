local p, me, lease, known, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local force, shards, skey = ARGV[6] == '1', ARGV[7], ARGV[8]
-- Every node of a cluster must spread ids over the same number of shards.
if shards then
  local s = redis.call('GET', skey)
  if not s then
    redis.call('SET', skey, shards)
  elseif s ~= shards then
    return {'shards', s}
  end
end
redis.call('SET', p..'node:'..me, '1', 'PX', lease)
redis.call('SADD', p..'nodes', me)
local epoch = redis.call('GET', p..'epoch')
if not epoch then
  epoch = fresh
  redis.call('SET', p..'epoch', epoch)
end
if force or (known ~= '' and known ~= epoch) then
  redis.call('SET', p..'settle', '1', 'PX', lease)
  -- Nodes alive shortly before a failover lost their leases only because the master was
  -- away: they count as alive for one more lease (claims wait for the settle meanwhile), so
  -- messages for their ids go to their inboxes rather than filling offline queues.
  for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
    if redis.call('EXISTS', p..'seen:'..node) == 1 then
      redis.call('SET', p..'node:'..node, '1', 'PX', lease, 'NX')
    end
  end
end
return epoch
