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
end
return epoch
