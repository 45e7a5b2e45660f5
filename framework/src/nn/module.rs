//! Parameters listed once: a layer says which fields hold parameters (the [`module!`]
//! macro writes both visitors from that one list), and `params` / `params_mut` of every
//! composite are derived from the visitors, in the same order, as burn's `Module` does.

use crate::param::Param;

/// Something that holds parameters, visited in a fixed order.
pub trait Module {
    /// Calls `f` on every parameter, in order.
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param));
    /// Calls `f` on every parameter, mutably, in [`Module::visit`] order.
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param));

    /// The parameters, in visiting order.
    fn params(&self) -> Vec<&Param> {
        let mut v = Vec::new();
        self.visit(&mut |p| v.push(p));
        v
    }

    /// The parameters, mutably, in visiting order.
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = Vec::new();
        self.visit_mut(&mut |p| v.push(p));
        v
    }
}

impl Module for Param {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        f(self)
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        f(self)
    }
}

impl<M: Module> Module for Option<M> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        if let Some(m) = self {
            m.visit(f)
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        if let Some(m) = self {
            m.visit_mut(f)
        }
    }
}

impl<M: Module> Module for Vec<M> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        self.iter().for_each(|m| m.visit(f))
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        self.iter_mut().for_each(|m| m.visit_mut(f))
    }
}

/// `module!(Type { field, field, … })`: implements [`Module`] by visiting the fields in the
/// order written. The one place a layer lists its parameters.
#[macro_export]
macro_rules! module {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::nn::module::Module for $ty {
            fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a $crate::param::Param)) {
                $( $crate::nn::module::Module::visit(&self.$field, f); )*
            }
            fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut $crate::param::Param)) {
                $( $crate::nn::module::Module::visit_mut(&mut self.$field, f); )*
            }
        }
    };
}
