"""Caffe's solvers for PyTorch: its update rules as :class:`torch.optim.Optimizer` subclasses
(:class:`SGD`, :class:`Nesterov`, :class:`AdaGrad`, :class:`RMSProp`, :class:`AdaDelta`,
:class:`Adam`), its learning-rate policies (:func:`learning_rate`, :func:`caffe_lr_lambda` for
``LambdaLR``) and param groups from a net's ``ParamSpec`` s (:func:`param_groups`,
:func:`learnable_blobs`).

A Caffe training iteration in torch::

    groups = caffenorm.optim.param_groups(net)
    opt = caffenorm.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, caffenorm.optim.caffe_lr_lambda(lr_policy="step", gamma=0.1, stepsize=100000))
    for batch in batches:
        opt.zero_grad()
        net(**batch)
        net.loss().backward()
        opt.step()
        sched.step()
"""

from caffenorm.optim.groups import LearnableBlob, learnable_blobs, param_groups
from caffenorm.optim.policies import POLICIES, CaffeLRLambda, caffe_lr_lambda, current_step, learning_rate
from caffenorm.optim.rules import SGD, AdaDelta, AdaGrad, Adam, CaffeOptimizer, Nesterov, RMSProp

__all__ = [
    "POLICIES",
    "SGD",
    "AdaDelta",
    "AdaGrad",
    "Adam",
    "CaffeLRLambda",
    "CaffeOptimizer",
    "LearnableBlob",
    "Nesterov",
    "RMSProp",
    "caffe_lr_lambda",
    "current_step",
    "learnable_blobs",
    "learning_rate",
    "param_groups",
]
