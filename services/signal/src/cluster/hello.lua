local p, me, lease, known, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('SET', p..'node:'..me, '1', 'PX', lease)
redis.call('SADD', p..'nodes', me)
local epoch = redis.call('GET', p..'epoch')
if not epoch then
  epoch = fresh
  redis.call('SET', p..'epoch', epoch)
end
if known ~= '' and known ~= epoch then
  redis.call('SET', p..'settle', '1', 'PX', lease)
end
return epoch
